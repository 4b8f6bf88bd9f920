"""Model zoo: `create(name, num_classes=..., **options)`, `names()`, `summary(model, input_shape)`."""
