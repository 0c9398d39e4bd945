"""vidctrl: train video diffusion models to follow a control signal (pose, camera)."""

__version__ = "0.1.0"
