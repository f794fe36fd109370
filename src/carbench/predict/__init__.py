"""The predict phase: the carbench-predict command."""
