"""Project methods and full-text search."""

from __future__ import annotations

from omnid_client.errors import NotFound
from omnid_client.protocol import ListProjects, Project, ProjectPage, ProjectRef, Search, SearchResult

from ..store import projects as project_store, search as search_store
from ._common import existing_session, project_of
from ._context import Caller, Context
from ._dispatch import handles


@handles("project.list")
def list_projects(ctx: Context, caller: Caller, p: ListProjects) -> ProjectPage:
    store = ctx.store
    store.settle_project_activity()
    projects, cursor = project_store.page(store.db, limit=p.limit, cursor=p.cursor, now=store.now())
    return ProjectPage(projects, cursor)


@handles("project.get")
def get(ctx: Context, caller: Caller, p: ProjectRef) -> Project:
    store = ctx.store
    project_id = project_of(ctx, p.project_id, p.workspace, create=False)
    store.settle_project_activity()
    project = project_store.get(store.db, project_id, store.now())
    if project is None:
        raise NotFound(f"no project {project_id}", {"project_id": project_id})
    return project


@handles("search")
def search(ctx: Context, caller: Caller, p: Search) -> SearchResult:
    if p.session_id is not None:
        existing_session(ctx, p.session_id)
    if p.project_id is not None:
        project_of(ctx, p.project_id, None, create=False)
    store = ctx.store
    hits = search_store.query(
        store.db,
        p.query,
        project_id=p.project_id,
        session_id=p.session_id,
        kinds=p.kinds,
        limit=p.limit,
        now=store.now(),
    )
    return SearchResult(hits)
