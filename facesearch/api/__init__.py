"""Generated API stubs."""
