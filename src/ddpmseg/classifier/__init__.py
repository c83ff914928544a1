"""The pixel classifier: the MLP ensemble, its training and prediction, cross-fitting, the mask
refiner, the interpreter job, segmenting new images, feature selection and label suggestions."""
