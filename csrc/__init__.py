"""Not Python: this marker lets the C++/CUDA sources ship as package data (fastpggan/csrc) so that an installed
fastpggan can build its extension on first use. See csrc/README.md."""
