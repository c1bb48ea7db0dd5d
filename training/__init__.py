"""Training of the offline "shapes" text-to-image model (issue 11); see training/README.md."""
