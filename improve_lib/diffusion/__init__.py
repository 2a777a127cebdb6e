"""The diffusion model (notebooks 04-05): the class-conditional UNet, the training objective, the training
entry point and its checkpoints, loss log and fast path, the launch from a notebook, a trained arm on disk,
the model folder it exports, and guided DDIM sampling."""
