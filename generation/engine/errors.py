"""What a run raises when it cannot make the recipe's images. Light: a web process catches
these without loading the heavy half."""


class WeightsMismatchError(RuntimeError):
    """The model's weights are not the ones the recipe was made with."""


class GenerationError(RuntimeError):
    """The run finished but produced no usable image, or could not start from its inputs."""


class InputMissingError(GenerationError):
    """An input image or mask the recipe names by hash was not given to ``generate``: it
    was deleted, or the caller did not pass it (``inputs={sha256: png}``)."""

    def __init__(self, sha256: str, what: str = "input"):
        super().__init__(
            f"the {what} {sha256[:12]}... this recipe starts from is not available: it was "
            "deleted, or was not given to the run"
        )
        self.sha256 = sha256
