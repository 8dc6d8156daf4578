"""Plumbing every wing uses: the TensorFlow process, argument rules, network probes, timing, figures, progress messages."""
