"""edgecam training package."""
