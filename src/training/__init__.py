"""Training: the LightningModule, its Trainer and CLI, and the contracts callbacks rely on."""
