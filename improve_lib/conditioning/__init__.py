"""The class conditioning (notebooks 02-03): image encoders and their embedding cache, Convolutional
Prototype Learning on the embeddings, the prototypes folder, and the class table an arm's UNet starts from."""
