"""Reading saved Keras models safely: the pre-load config check, the layers gencompress provides
itself (community layers, TF op layers) and the ``.h5`` loader (tf-keras, Keras 3, old Python
Lambdas). ``gencompress.model.load_model`` is the entry point; these modules are its parts.
"""


def builtin_objects() -> dict:
    """Classes tf-keras gets for layer names it does not know itself; none comes from a model file.

    A user's ``--custom-objects`` entries are merged over these, so theirs win.
    """
    from gencompress.loading.community_layers import community_objects
    from gencompress.loading.config_check import tf_op_layer_class

    return {**community_objects(), "TensorFlowOpLayer": tf_op_layer_class()}
