"""Control adapters: how a control signal (camera trajectory, pose video) becomes model input."""
