"""Small-cell protection of aggregate tables (rows = sites and the overall row, columns = categories).

Primary: a count from 1 to `min_cell - 1` is hidden. Complementary: a line whose cells add up to a known
total must not hold exactly one hidden cell, or subtraction gives it back; such a line gets its smallest
other cell hidden too (a non-zero one when there is one). Lines are every column (the overall row is the
sum of the site rows) and every row (its columns split the row's subjects, and a site's subject total is
published). Repeated until stable.
"""

from collections.abc import Hashable, Sequence

Cell = tuple[Hashable, Hashable]


def hidden_cells(
    values: dict[Cell, int], rows: Sequence[Hashable], columns: Sequence[Hashable], min_cell: int
) -> set[Cell]:
    hidden = {cell for cell, value in values.items() if 0 < value < min_cell}
    if not hidden:
        return hidden
    lines = [[(row, column) for row in rows] for column in columns]
    lines += [[(row, column) for column in columns] for row in rows]

    def least_telling(cell: Cell) -> tuple:
        value = values.get(cell, 0)
        return value == 0, value, str(cell[1]), str(cell[0])

    changed = True
    while changed:
        changed = False
        for line in lines:
            shown = [cell for cell in line if cell not in hidden]
            if len(line) - len(shown) == 1 and shown:
                hidden.add(min(shown, key=least_telling))
                changed = True
    return hidden
