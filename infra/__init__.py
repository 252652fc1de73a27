"""The AWS deployment of cubeless: one construct per concern, composed in :mod:`infra.stack`."""
