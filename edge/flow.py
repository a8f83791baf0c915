"""Dense optical flow between consecutive analysed frames, summarised for the violence head.

Fights are large, erratic motion: many moving pixels, fast, in many directions at once, with
shear and rotation, changing from one frame to the next. Per frame pair, `pair_stats` keeps
global statistics of the flow field plus its mean per cell of a coarse grid; over a window,
`flow_window_features` reduces those to a fixed-size vector. Farneback's flow on a 160x120
grayscale frame costs a few milliseconds on one core. The same flow, computed again on the
region that moves (`motion_box`, at `REGION` pixels square), sees limbs where the whole frame
sees a blob.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
SIZE = (160, 120)  # flow frame (width, height)
REGION = 144  # side of the moving region's flow frame (divisible by GRID and COARSE)
GRID = (6, 8)  # cells of 20x20 pixels (rows, columns) for the per-cell means
COARSE = (4, 4)  # cells for the spatial spread of motion
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)  # pyr_scale, levels, winsize, iterations, poly_n/sigma
GLOBAL_STATS = 19
CELLS = 4 * GRID[0] * GRID[1]
PAIR_SIZE = GLOBAL_STATS + CELLS + 1  # global stats, per-cell (u, v, |flow|, moving), change
WINDOW_SIZE = 3 * GLOBAL_STATS + 3 + 14
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


def gray(frame: U8) -> U8:
    """A BGR frame in grayscale (what both flows are computed from)."""
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), np.uint8)


def flow_gray(gray_frame: U8) -> U8:
    """A grayscale frame as the small image the whole frame's flow is computed on."""
    return np.asarray(cv2.resize(gray_frame, SIZE, interpolation=cv2.INTER_AREA), np.uint8)


def region_gray(gray_frame: U8, box: Box) -> U8:
    """The `box` of a grayscale frame as the `REGION`-square image its own flow is computed on."""
    x0, y0, x1, y1 = box
    region = np.ascontiguousarray(gray_frame[y0:y1, x0:x1])
    return np.asarray(cv2.resize(region, (REGION, REGION), interpolation=cv2.INTER_AREA), np.uint8)


def dense_flow(previous: U8, current: U8) -> F32:
    """Farneback's dense flow [h, w, 2] (pixels of the flow frame) from `previous`."""
    out = cv2.calcOpticalFlowFarneback(previous, current, None, *FARNEBACK)  # type: ignore[call-overload, unused-ignore]
    return np.asarray(out, np.float32)


def speed_of(flow: F32) -> F32:
    """Each pixel's flow magnitude [h, w] (pixels of the flow frame per pair)."""
    return np.asarray(np.hypot(flow[..., 0], flow[..., 1]), np.float32)


def motion_box(
    flow: F32,
    shape: tuple[int, ...],
    previous: Box | None = None,
    *,
    fastest: bool = False,
    speed: F32 | None = None,
) -> Box:
    """The square of a frame of `shape` around where `flow` moves, for the backbone to look
    at: pixels faster than 1 px per pair, 5th to 95th percentile of their positions, enlarged
    1.4 times, at least half the frame's short side. With `fastest`, a tighter square (for
    distant fights): around the quarter of the moving pixels that move fastest, at least a
    quarter of the short side. With fewer than 20 such pixels, the `previous` box (or the
    whole frame). `speed`: `speed_of(flow)`, if the caller has it already."""
    speed = speed_of(flow) if speed is None else speed
    moving = speed > 1.0
    height, width = shape[0], shape[1]
    if np.count_nonzero(moving) < 20:
        return previous or (0, 0, width, height)
    if fastest:
        moving = speed > max(1.0, float(np.percentile(speed[moving], 75)))
        if np.count_nonzero(moving) < 20:
            return previous or (0, 0, width, height)
    ys, xs = np.nonzero(moving)
    fy, fx = height / speed.shape[0], width / speed.shape[1]
    x0, x1 = np.percentile(xs, [5, 95]) * fx
    y0, y1 = np.percentile(ys, [5, 95]) * fy
    side = max(x1 - x0, y1 - y0) * 1.4
    side = min(max(side, min(width, height) / (4 if fastest else 2)), max(width, height))
    left = int(np.clip((x0 + x1 - side) / 2, 0, max(0.0, width - side)))
    top = int(np.clip((y0 + y1 - side) / 2, 0, max(0.0, height - side)))
    return left, top, int(min(width, left + side)), int(min(height, top + side))


def _blocks(a: F32, rows: int, cols: int) -> F32:
    h, w = a.shape
    return np.asarray(a.reshape(rows, h // rows, cols, w // cols).mean((1, 3)), np.float32)


def pair_stats(flow: F32, previous: F32 | None, mag: F32 | None = None) -> F32:
    """[PAIR_SIZE] summary of one flow field (`previous`: the flow before it, or None;
    `mag`: `speed_of(flow)`, if the caller has it already)."""
    u, v = flow[..., 0], flow[..., 1]
    mag = speed_of(flow) if mag is None else mag
    mean = float(mag.mean()) + 1e-6
    moving = mag > 0.5
    hist = np.bincount(
        ((np.arctan2(v[moving], u[moving]) + np.pi) / (2 * np.pi) * 8).astype(np.intp) % 8,
        weights=mag[moving],
        minlength=8,
    )
    hist = hist / (hist.sum() + 1e-6)
    coarse = _blocks(mag, *COARSE).ravel()
    share = coarse / (coarse.sum() + 1e-6)
    cu, cv = _blocks(u, *COARSE).ravel(), _blocks(v, *COARSE).ravel()
    top = np.partition(mag.ravel(), -mag.size // 20)[-mag.size // 20 :].sum() / (mag.sum() + 1e-6)
    div = float(np.abs(cv2.Sobel(u, cv2.CV_32F, 1, 0) + cv2.Sobel(v, cv2.CV_32F, 0, 1)).mean())
    curl = float(np.abs(cv2.Sobel(v, cv2.CV_32F, 1, 0) - cv2.Sobel(u, cv2.CV_32F, 0, 1)).mean())
    stats = [
        mean, *np.percentile(mag, [50, 90, 99]), mag.max(),
        *(np.mean(mag > t) for t in (0.5, 1, 2, 4)),
        -np.sum(hist * np.log(hist + 1e-9)),  # direction entropy
        np.hypot(u.mean(), v.mean()) / mean,  # global coherence
        share.max(), -np.sum(share * np.log(share + 1e-9)),  # spatial concentration
        np.hypot(cu, cv).sum() / (coarse.sum() + 1e-6),  # coherence within coarse cells
        top, div, curl, div / mean, curl / mean,
    ]  # fmt: skip
    cells = [_blocks(a, *GRID).ravel() for a in (u, v, mag, (mag > 1).astype(np.float32))]
    change = np.nan if previous is None else _mean_distance(flow, previous)
    return np.concatenate([np.array(stats, np.float32), *cells, [change]]).astype(np.float32)


def _mean_distance(flow: F32, previous: F32) -> float:
    """Mean length of the per-pixel difference of two flows (as `np.linalg.norm(..., axis=2)`,
    without its slow reduction over an axis of 2)."""
    d = flow - previous
    return float(np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]).mean())


def _cell_features(cells: F32) -> list[float]:
    """Where and how coherently the motion happens, from the per-cell means [t, 4, rows, cols]."""
    u, v, mag, moving = cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3]
    t = len(cells)
    vec = np.hypot(u, v)
    mf, inc = mag.reshape(t, -1), (1 - vec / (mag + 1e-3)).reshape(t, -1)
    order = np.argsort(-mf, 1)[:, :3]
    top_mag = np.take_along_axis(mf, order, 1).mean(1)
    top_inc = np.take_along_axis(inc, order, 1).mean(1)
    w_inc = (inc * mf).sum(1) / (mf.sum(1) + 1e-3)
    active = (moving.reshape(t, -1) > 0.2).mean(1)
    cell_mean, cell_std = mag.mean(0).ravel(), mag.std(0).ravel()
    steady = (np.hypot(u.sum(0), v.sum(0)) / (mag.sum(0) + 1e-3)).ravel()
    busiest = np.argsort(-cell_mean)[:4]
    if t > 1:
        dots = (u[1:] * u[:-1] + v[1:] * v[:-1]) / (vec[1:] * vec[:-1] + 1e-3)
        turn = float((dots * mag[1:]).sum() / (mag[1:].sum() + 1e-3))
    else:
        turn = 0.0
    return [
        np.log(top_mag.mean() + 1e-2), np.log(top_mag.max() + 1e-2), top_inc.mean(),
        w_inc.mean(), w_inc.max(), active.mean(), active.max(),
        np.log(cell_mean[busiest].mean() + 1e-2),
        (cell_std / (cell_mean + 1e-2))[busiest].mean(),  # erratic over time
        steady[busiest].mean(), (steady * cell_mean).sum() / (cell_mean.sum() + 1e-3),
        turn,  # direction kept from one frame to the next
        np.sort(cell_mean)[-4:].sum() / (cell_mean.sum() + 1e-3),
        np.log(cell_std[busiest].mean() + 1e-2),
    ]  # fmt: skip


def flow_window_features(pairs: F32) -> F32:
    """[WINDOW_SIZE] features of a window of `pair_stats` rows [t, PAIR_SIZE] (t >= 1)."""
    stats = pairs[:, :GLOBAL_STATS].astype(np.float64)
    stats[:, :5] = np.log(stats[:, :5] + 1e-3)  # magnitudes: log scale
    log_mean = stats[:, 0]
    accel = float(np.abs(np.diff(log_mean)).mean()) if len(log_mean) > 1 else 0.0
    changes = pairs[:, -1][~np.isnan(pairs[:, -1])]
    change = float(changes.mean()) if len(changes) else 0.0
    speed = float(np.exp(log_mean).mean())
    temporal = [accel, np.log(change + 1e-3), np.log(change / (speed + 1e-3) + 1e-3)]
    cells = pairs[:, GLOBAL_STATS:-1].reshape(len(pairs), 4, *GRID)
    parts = [stats.mean(0), stats.max(0), stats.std(0), temporal, _cell_features(cells)]
    return np.concatenate(parts).astype(np.float32)
