"""Input data: TFDS ArrayRecord datasets (the digits demo set, image folders) read through Grain."""
