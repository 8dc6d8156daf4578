"""Images as tf.data: the pipeline, folders, TFDS, augmentation, the offline sample."""
