"""One registry kind for the distillation methods (`--student_model`) and the multi-teacher
combiners (`--multi_teacher_model`): name -> class. Each class may carry a typed
`options_class` whose fields are its command-line flags (`distill.options.option`), so the
parser's method groups, the "option of another method" check and `--help` all come from here.
"""
from typing import Dict, Iterator, List, Optional


class Registry(Dict[Optional[str], type]):
    """{name: class}; `register` is the class decorator, `lookup` the checked access."""

    def __init__(self, flag: str, base: type):
        super().__init__()
        self.flag, self.base = flag, base

    def register(self, *names: Optional[str]):
        """Class decorator: register under `names` (default: the class's `name`)."""
        def add(cls):
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} is not a {self.base.__name__} subclass")
            for name in names or (cls.name,):
                if self.get(name, cls) is not cls:
                    raise ValueError(f"{self.flag}={name!r} is already registered by {self[name].__name__}")
                self[name] = cls
            return cls
        return add

    def lookup(self, name: Optional[str]) -> type:
        if name not in self:
            raise KeyError(f"unknown {self.flag}={name!r}; valid: {', '.join(self.names())}")
        return self[name]

    def names(self) -> List[str]:
        return sorted(name for name in self if name)

    def classes(self) -> Iterator[type]:
        """Each registered class once, in registration order."""
        return iter(dict.fromkeys(self.values()))
