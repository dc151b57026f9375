"""SPACE presets per architecture family (presets/) and ready Hub folders, shipped as package data."""
