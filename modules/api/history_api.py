"""`/sdapi/v1/history`: the generation history over HTTP (modules/history.py): search with keyset pagination, one
picture's row, its file, the A1111 request that recreates it, star/rate/board, delete (to the trash) and restore.
Unknown ids are 404, bad filters or values 422."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from modules.api.api import ApiError, _errors
from modules.history import HistoryError, Query, request_fields


def _date(value: str | None, field: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ApiError(422, f"{field}: a date as YYYY-MM-DD (or an ISO date and time), not {value!r}") from None


class HistoryApi:
    def __init__(self, app: FastAPI, engine, auth=None):
        self.engine = engine
        deps = [Depends(auth)] if auth is not None else []
        responses = _errors(401) if auth is not None else {}
        router = APIRouter(prefix="/sdapi/v1/history", dependencies=deps, tags=["history"], responses=responses)
        router.add_api_route("", self.search, methods=["GET"], responses=_errors(422))
        router.add_api_route("/{image_id}", self.get, methods=["GET"], responses=_errors(404, 422))
        router.add_api_route("/{image_id}/image", self.image, methods=["GET"], responses=_errors(404, 422),
                             response_class=FileResponse)
        router.add_api_route("/{image_id}/params", self.params, methods=["GET"], responses=_errors(404, 422))
        router.add_api_route("/{image_id}", self.patch, methods=["PATCH"], responses=_errors(404, 422))
        router.add_api_route("/{image_id}", self.delete, methods=["DELETE"], responses=_errors(404, 422))
        router.add_api_route("/{image_id}/restore", self.restore, methods=["POST"], responses=_errors(404, 422))
        app.include_router(router)  # a wrong method gets /sdapi/v1's 405 with Allow (it sees these routes)

    @property
    def store(self):
        if self.engine.history is None:
            raise ApiError(404, "the history is turned off")
        return self.engine.history

    async def _call(self, fn, *args):
        try:
            return await run_in_threadpool(fn, *args)
        except KeyError as e:
            raise ApiError(404, f"no picture with id {e.args[0]} in the history") from None
        except HistoryError as e:
            raise ApiError(422, str(e)) from None

    async def search(self, q: str = "", model: str = "", sampler: str = "", starred: bool | None = None,
                     board: str | None = None, min_width: int = 0, min_height: int = 0, since: str | None = None,
                     until: str | None = None, cursor: int | None = None, limit: int = 50,
                     include_deleted: bool = False, trash: bool = False, order: str = "newest"):
        """Pictures newest first (`order`: newest, oldest, rating); `next_cursor` (when there are more) is the
        `cursor` of the next page; `trash`: only the deleted ones (restorable)."""
        if min_width < 0 or min_height < 0:
            raise ApiError(422, "min_width/min_height: not negative")
        query = Query(q=q, model=model, sampler=sampler, starred=starred, board=board, min_width=min_width,
                      min_height=min_height, since=_date(since, "since"), until=_date(until, "until"),
                      include_deleted=include_deleted, trash=trash, cursor=cursor, limit=limit, order=order)
        items, next_cursor = await self._call(self.store.search, query)
        return {"items": items, "next_cursor": next_cursor}

    async def get(self, image_id: int):
        return await self._call(self.store.get, image_id)

    async def image(self, image_id: int):
        row = await self._call(self.store.get, image_id)
        path = Path(row["path"])
        if row["deleted"] or not path.is_file():
            raise ApiError(404, f"picture {image_id} is {'in the trash' if row['deleted'] else 'missing'}: "
                                f"{path.name}")
        return FileResponse(path)

    async def params(self, image_id: int) -> dict[str, Any]:
        """The A1111 txt2img request fields (and override_settings) its infotext gives: post them to recreate it."""
        row = await self._call(self.store.get, image_id)
        return request_fields(row["infotext"])

    async def patch(self, image_id: int, changes: dict[str, Any] = Body(...)):
        """`starred` (true/false), `rating` (0–5), `board` (a name; "" for none)."""
        return await self._call(self.store.update, image_id, changes)

    async def delete(self, image_id: int):
        """To the trash folder (outputs/.trash), restorable with POST …/restore."""
        return await self._call(self.store.delete, image_id)

    async def restore(self, image_id: int):
        return await self._call(self.store.restore, image_id)


def mount(app: FastAPI, engine, auth=None) -> HistoryApi:
    return HistoryApi(app, engine, auth)
