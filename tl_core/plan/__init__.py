"""Choosing before training: the Auto plan (which layers learn, measured on the user's images), what a
plan costs here, and which backbone suits the images."""
