from .transport import Sampler, Transport


def create_transport(path_type="Linear", prediction="velocity", loss_weight=None, train_eps=None, sample_eps=None,
                     use_cosine_loss=None, use_lognorm=None, **unused):
    """LightningDiT's create_transport for what its configs use: the Linear path, velocity prediction
    (where SiT's eps defaults are both 0)."""
    if path_type != "Linear" or prediction != "velocity":
        raise NotImplementedError("this statement covers LightningDiT's Linear path with velocity prediction")
    return Transport(use_cosine_loss=bool(use_cosine_loss), use_lognorm=bool(use_lognorm))
