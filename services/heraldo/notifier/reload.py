"""Hot reload: follows Consul KV and the live replicas, and applies changes to a running notifier.

``config/`` is followed with blocking queries, so a change reaches the notifier within a second
or two. Each changed key is checked on its own: a value that does not convert or validate is
logged with its key and dropped, and that setting keeps its last good value; the other changes
still apply. A variable ``HERALDO_<NAME>`` in the environment pins its setting: KV cannot change
it. Template overrides (``config/notifier/templates/...``) are checked by rendering a sample; a
bad one is logged with its key and the templates in use stay.

The number of passing ``heraldo-notifier`` instances is followed the same way, so each replica
sends at its share of the cluster-wide ``rate_per_s``. Shares are equal, whatever each replica's
load: a replica with little work leaves part of the cluster rate unused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Mapping
from typing import get_type_hints

import consul.aio

from heraldo.errors import ConfigError
from heraldo.notifier.render import InvalidTemplate, Renderer, overrides_from_kv
from heraldo.notifier.servicer import NotifierServicer
from heraldo.notifier.settings import SERVICE_SCOPE, NotifierSettings
from heraldo.registry import watch_kv_tree, watch_passing_instances
from heraldo.settings import KV_PREFIX, SHARED_SCOPE, convert

logger = logging.getLogger(__name__)


def _shown(name: str, value: object) -> str:
    return "'***'" if "password" in name else repr(value)


def updated_settings(current: NotifierSettings, kv: Mapping[str, str],
                     env: Mapping[str, str] | None = None,
                     template_sets: frozenset[str] | None = None) -> NotifierSettings:
    """``current`` with every valid value of ``kv`` applied; each bad one is logged and skipped.

    ``kv`` is the whole tree (seed defaults first, then Consul's keys), as at startup. A
    ``default_template`` outside ``template_sets`` (when given) is bad: every notification that
    names no template would be refused.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(NotifierSettings)
    settings = current
    for field in dataclasses.fields(NotifierSettings):
        name = field.name
        if f"HERALDO_{name.upper()}" in env:
            continue
        keys = [key for key in (f"{KV_PREFIX}{SHARED_SCOPE}/{name}",
                                f"{KV_PREFIX}{SERVICE_SCOPE}/{name}") if key in kv]
        if not keys:
            continue
        key = keys[-1]
        try:
            value = convert(kv[key], hints[name], key)
            if value == getattr(settings, name):
                continue
            if name == "default_template" and template_sets is not None \
                    and value not in template_sets:
                raise ValueError(f"unknown template set {value!r}; known: "
                                 f"{', '.join(sorted(template_sets))}")
            settings = dataclasses.replace(settings, **{name: value})
        except (ConfigError, ValueError) as exc:
            logger.warning("rejected setting key=%s value=%s: %s; keeping %s", key,
                           _shown(name, kv[key]), exc, _shown(name, getattr(settings, name)))
    return settings


class LiveConfig:
    """Applies what the watches report to ``servicer``; ``run`` starts the watches."""

    def __init__(self, *, servicer: NotifierServicer, seed: Mapping[str, str],
                 service_name: str = "heraldo-notifier",
                 env: Mapping[str, str] | None = None) -> None:
        self._servicer = servicer
        self._seed = dict(seed)
        self._service_name = service_name
        self._env = env
        self._templates: dict[str, str] | None = None

    def on_kv(self, tree: Mapping[str, str]) -> None:
        """One KV snapshot. Template overrides and settings are checked together, so that one
        change may add a template set and make it the default, or move the default off a set it
        removes."""
        templates = overrides_from_kv(tree)
        renderer = self._compiled(templates)
        sets = renderer.template_sets if renderer is not None else self._servicer.template_sets
        current = self._servicer.settings
        settings = updated_settings(current, {**self._seed, **tree}, self._env,
                                    template_sets=sets)
        if renderer is not None:
            try:
                self._servicer.use_renderer(renderer, settings.default_template)
            except InvalidTemplate as exc:
                logger.warning("rejected template override %s; keeping the templates in use", exc)
            else:
                self._templates = templates
                logger.info("templates reloaded overrides=%d", len(templates))
        changed = [f.name for f in dataclasses.fields(settings)
                   if getattr(settings, f.name) != getattr(current, f.name)]
        if changed:
            self._servicer.apply_settings(settings)
            logger.info("settings reloaded replica_rate_per_s=%g changed=%s",
                        self._servicer.rate_per_s, ",".join(changed))

    def _compiled(self, templates: dict[str, str]) -> Renderer | None:
        """A renderer for ``templates`` when they changed and can be used; None otherwise."""
        if templates == self._templates:
            return None
        try:
            return self._servicer.renderer_for(templates)
        except InvalidTemplate as exc:
            logger.warning("rejected template override %s; keeping the templates in use", exc)
            return None

    def on_replicas(self, replica_ids: dict[str, dt.datetime | None]) -> None:
        self._servicer.set_live_replicas(replica_ids)
        logger.info("live replicas service=%s count=%d replica_rate_per_s=%g",
                    self._service_name, len(replica_ids), self._servicer.rate_per_s)

    async def run(self, client: consul.aio.Consul, *, wait_s: float = 30.0) -> None:
        """Follows KV and the passing replicas until cancelled."""
        await asyncio.gather(
            watch_kv_tree(client, self.on_kv, KV_PREFIX, wait_s=wait_s),
            watch_passing_instances(client, self._service_name, self.on_replicas,
                                    wait_s=wait_s),
        )
