"""Published contracts built from the code: the AsyncAPI document of the topics."""
