"""edgecam conversion package."""
