"""What a log may say of a failure."""

import traceback


def types_and_frames(error: BaseException) -> str:
    """What a log may say of an exception: the types of it and of its causes, and where each was raised; never
    a message, which may quote stored values (SQL parameters, a database's DETAIL line)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return "".join(
        f"{type(link).__module__}.{type(link).__qualname__}, raised at:\n"
        + "".join(traceback.format_list(traceback.extract_tb(link.__traceback__)))
        for link in chain
    )
