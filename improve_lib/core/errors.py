"""The one exception type for bad input, so notebooks and the CLI can show it plainly."""


class StudyInputError(ValueError):
    """Bad input from the user: the message names the file, column, class or parameter at fault
    and says what was expected."""
