"""SiT's transport package (statement): create_transport, Transport, Sampler."""

from .transport import ModelType, PathType, Sampler, Transport, WeightType


def create_transport(path_type="Linear", prediction="velocity", loss_weight=None, train_eps=None, sample_eps=None):
    model_type = {"noise": ModelType.NOISE, "score": ModelType.SCORE}.get(prediction, ModelType.VELOCITY)
    loss_type = {"velocity": WeightType.VELOCITY, "likelihood": WeightType.LIKELIHOOD}.get(loss_weight, WeightType.NONE)
    path_type = {"Linear": PathType.LINEAR, "GVP": PathType.GVP, "VP": PathType.VP}[path_type]
    # eps defaults: both decided on `train_eps is None` (a sample_eps given alone is dropped).
    if path_type == PathType.VP:
        train_eps, sample_eps = (1e-5 if train_eps is None else train_eps), (1e-3 if train_eps is None else sample_eps)
    elif model_type != ModelType.VELOCITY:
        train_eps, sample_eps = (1e-3 if train_eps is None else train_eps), (1e-3 if train_eps is None else sample_eps)
    else:  # velocity on Linear / GVP is finite on the whole of [0, 1]
        train_eps, sample_eps = 0, 0
    return Transport(model_type=model_type, path_type=path_type, loss_type=loss_type, train_eps=train_eps,
                     sample_eps=sample_eps)
