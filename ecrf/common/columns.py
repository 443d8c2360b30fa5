"""Column types shared by the store's tables and the audit trail's."""

from sqlalchemy import BigInteger, Integer

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BIG_ID = BigInteger().with_variant(Integer, "sqlite")
