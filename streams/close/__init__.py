"""Month close: the decisions and the I/O of closing a month and exporting its claims."""
