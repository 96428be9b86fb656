"""CSPDarknet-style net (2.1M params, Mish): SGD 0.1, wd 5e-4, cosine, 150 epochs,
crop + flip + cutout."""
from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "cspnet"
  config.model.activation = "mish"
  config.num_epochs = 150
  config.augment = "crop(pad=4)|flip|cutout(size=8)"
  return config
