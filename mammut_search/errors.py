"""Errors the user can fix. The CLI prints them on one line; everything else is a bug."""


class UserError(Exception):
    """A problem with the user's input (a path, a file, a value), with a message saying what to do."""


class CheckpointError(UserError):
    """A checkpoint directory is missing, corrupt, or does not match its config."""


class ImageLoadError(UserError):
    """An image file cannot be decoded safely."""


class IndexStoreError(UserError):
    """An index directory is missing, corrupt, or was built by another checkpoint."""
