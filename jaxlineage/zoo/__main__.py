"""``python -m jaxlineage.zoo --spec NAME --workdir DIR``."""

from jaxlineage.zoo.report import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
