"""The read service: per-client reads from RethinkDB or the SQL store by read stage."""
