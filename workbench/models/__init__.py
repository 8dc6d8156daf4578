"""The RegNet models: design space, layers, the `regnet` builder, the model contract, published weights and their conversion, TF Hub backbones."""
