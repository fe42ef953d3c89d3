"""Quadratic networks (Fan et al.): ReLinear training, the Runge study, exact symbolic pieces.

* :mod:`approx.relinear`: ReLinear-sg parameter groups, ReLinear-sw shrinkage, ReZero;
* :mod:`approx.nets`: univariate QNN / MLP builders, save and load;
* :mod:`approx.runge`: the Runge study (``python -m approx runge``);
* :mod:`approx.pieces`: exact polynomial pieces of a univariate ReLU network (``python -m approx pieces``).

The layers themselves live in :mod:`inr.layers.quadratic`.
"""
