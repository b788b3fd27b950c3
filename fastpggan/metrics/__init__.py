"""Quality metrics (SWD, MS-SSIM, FID). Not implemented yet: they arrive with the metrics issue."""
