"""``Model``: a registry model, its versions, default version, comment and tags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from neve.client import compat
from neve.client.model_version import ModelVersion, segment_name
from neve.client.rest import frame
from neve.identifiers import ident, quote

if TYPE_CHECKING:
    from neve.client.registry import Registry


class Model:
    """A registered model: its versions, default version, comment and tags."""

    def __init__(self, registry: Registry, name: str, row: dict | None = None) -> None:
        self._registry = registry
        self._client = registry._client
        self._name = name
        self._row = row

    def __repr__(self) -> str:
        return f"Model({self.fully_qualified_name})"

    @property
    def name(self) -> str:
        return self._name

    def rename(self, model_name: str) -> None:
        """Give the model a new name (in its schema); its versions, aliases and the services
        that serve them follow."""
        registry, name = self._registry._locate(model_name)
        if registry is not self._registry:
            raise compat.unsupported(
                f"moving model {self.fully_qualified_name} to another schema",
                f"copy a version there with Registry(session, database_name=..., schema_name="
                f"...).log_model(model_version, model_name={name!r})",
            )
        row = self._client.call("PATCH", self._path, json={"name": quote(name)})
        self._name, self._row = row["name"], row

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and other.fully_qualified_name == self.fully_qualified_name

    def __hash__(self) -> int:
        return hash(self.fully_qualified_name)

    @property
    def fully_qualified_name(self) -> str:
        return f"{self._registry.location}.{quote(self.name)}"

    @property
    def _path(self) -> str:
        return self._registry._path(self.name)

    def _describe(self) -> dict:
        self._row = self._client.call("GET", self._path)
        return self._row

    def versions(self) -> list[ModelVersion]:
        rows = self._client.call("GET", self._path + "/versions")
        return [ModelVersion(self, row["name"], row) for row in rows]

    def show_versions(self) -> pd.DataFrame:
        return frame(self._client.call("GET", self._path + "/versions"))

    def version(self, version_or_alias: str) -> ModelVersion:
        """A version by name or alias (also DEFAULT, FIRST, LAST)."""
        row = self._client.call(
            "GET",
            f"{self._path}/versions/{segment_name(version_or_alias, 'version name or alias')}",
        )
        return ModelVersion(self, row["name"], row)

    def first(self) -> ModelVersion:
        return self.version("FIRST")

    def last(self) -> ModelVersion:
        return self.version("LAST")

    @property
    def default(self) -> ModelVersion:
        return self.version("DEFAULT")

    @default.setter
    def default(self, version: str | ModelVersion) -> None:
        name = quote(version.version_name) if isinstance(version, ModelVersion) else version
        self._client.call("PATCH", self._path, json={"default_version": name})

    def delete_version(self, version_name: str) -> None:
        self._client.call(
            "DELETE", f"{self._path}/versions/{segment_name(version_name, 'version name')}"
        )

    @property
    def comment(self) -> str | None:
        return self._describe().get("comment")

    @comment.setter
    def comment(self, text: str | None) -> None:
        self._client.call("PATCH", self._path, json={"comment": text})

    description = comment

    # -- tags -------------------------------------------------------------------------------------
    def set_tag(self, tag_name: str, tag_value: Any) -> None:
        self._client.call(
            "PUT",
            f"{self._path}/tags/{segment_name(tag_name, 'tag name')}",
            json={"value": tag_value},
        )

    def get_tag(self, tag_name: str) -> Any:
        """The tag's value, or None when the model has no such tag."""
        return self.show_tags().get(ident(tag_name, kind="tag name"))

    def unset_tag(self, tag_name: str) -> None:
        self._client.call("DELETE", f"{self._path}/tags/{segment_name(tag_name, 'tag name')}")

    def show_tags(self) -> dict[str, Any]:
        return self._client.call("GET", self._path + "/tags")
