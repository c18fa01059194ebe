"""Building blocks of the ViL model, one concept per module."""
