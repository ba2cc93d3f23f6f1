"""``python -m jaxlineage.zoo --spec NAME --workdir DIR``."""

from jaxlineage.zoo.report import main

if __name__ == "__main__":
    main()
