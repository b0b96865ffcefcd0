"""Pictures of a sampling trace: one coloured terminal frame or one GIF frame per denoising step.

Masked positions are shown as a grey block, tokens committed in the current step are highlighted, the
prompt has its own colour, and a header counts the steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .masked import StepFrame

MASK_GLYPH = "░"
ANSI_RESET = "\x1b[0m"
ANSI_STYLES = {"prompt": "\x1b[36m", "masked": "\x1b[2m", "new": "\x1b[1;30;43m", "token": ""}
GIF_COLOURS = {"prompt": (0, 90, 160), "masked": (190, 190, 190), "new": (0, 0, 0), "token": (20, 20, 20)}
GIF_HIGHLIGHT = (255, 214, 60)
GIF_BACKGROUND = (255, 255, 255)


@dataclass
class Cell:
    """One position of a row as it is displayed."""

    text: str
    kind: str  # "prompt", "masked", "new" (committed in this step) or "token"


class TokenPieces:
    """Text of single token ids, keeping the leading spaces that decoding one id alone may drop."""

    def __init__(self, tokenizer, anchor: str = "a"):
        self.tokenizer = tokenizer
        self.anchor_ids = tokenizer.encode(anchor, add_special_tokens=False)[:1]
        self.anchor_text = tokenizer.decode(self.anchor_ids)
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            with_anchor = self.tokenizer.decode(self.anchor_ids + [token_id])
            if self.anchor_ids and with_anchor.startswith(self.anchor_text):
                text = with_anchor[len(self.anchor_text) :]
            else:
                text = self.tokenizer.decode([token_id])
            # A lone byte of a multi-byte character decodes to nothing: show the token's own name instead.
            text = text or self.tokenizer.convert_ids_to_tokens(token_id) or "?"
            self.cache[token_id] = "".join(map(printable, text))
        return self.cache[token_id]


def printable(char: str) -> str:
    """The character, or an escape for control characters (newline -> \\n, escape -> \\x1b)."""
    if char.isprintable():
        return char
    return repr(char)[1:-1]


def frame_cells(frame: StepFrame, row: int, pieces: TokenPieces, mask_token_id: int) -> list[Cell]:
    """The displayed cells of one row of a frame; left padding is left out."""
    cells = []
    ids = frame.sequences[row].tolist()
    for position, token_id in enumerate(ids):
        if not frame.attention_mask[row, position]:
            continue
        if position < frame.generation_start:
            cells.append(Cell(pieces(token_id), "prompt"))
        elif token_id == mask_token_id:
            cells.append(Cell(MASK_GLYPH, "masked"))
        else:
            cells.append(Cell(pieces(token_id), "new" if frame.committed[row, position] else "token"))
    return cells


def frame_header(frame: StepFrame, row: int, total_steps: int | None = None) -> str:
    """'step 3/16  block 1  +2 tokens' ('finished' for a row that was done before this step)."""
    total = f"/{total_steps}" if total_steps else ""
    added = int(frame.committed[row].sum())
    block = frame.blocks[row]
    where = f"block {block + 1}" if block >= 0 else "finished"
    return f"step {frame.step + 1}{total}  {where}  +{added} tokens"


def render_text(frame, row, pieces, mask_token_id, total_steps=None, color: bool = True) -> str:
    """Header line and the row's text; with `color=False` new tokens are [bracketed] instead of coloured."""
    parts = []
    for cell in frame_cells(frame, row, pieces, mask_token_id):
        if color and ANSI_STYLES[cell.kind]:
            parts.append(f"{ANSI_STYLES[cell.kind]}{cell.text}{ANSI_RESET}")
        elif not color and cell.kind == "new":
            parts.append(f"[{cell.text}]")
        else:
            parts.append(cell.text)
    return frame_header(frame, row, total_steps) + "\n" + "".join(parts)


def load_font(size: int = 16):
    """Pillow's default font (scalable when FreeType is available)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):
        return ImageFont.load_default()


def _layout(cells, draw, font, width, margin, line_height):
    """(x, y, width, cell) boxes for the cells, wrapped at `width`; also the bottom y."""
    boxes, x, y = [], margin, margin + line_height  # first line is the header
    mask_width = draw.textlength("M", font=font)
    for cell in cells:
        cell_width = mask_width if cell.kind == "masked" else draw.textlength(cell.text, font=font)
        if x + cell_width > width - margin and x > margin:
            x, y = margin, y + line_height
        boxes.append((x, y, cell_width, cell))
        x += cell_width + (2 if cell.kind == "masked" else 0)
    return boxes, y + line_height + margin


def render_gif(
    frames,
    path,
    tokenizer,
    mask_token_id: int,
    row: int = 0,
    duration_ms: int = 200,
    width: int = 720,
    font_size: int = 16,
) -> int:
    """Write one GIF frame per trace frame (row `row`) to `path`; returns the number of frames."""
    if not frames:
        raise ValueError("the trace is empty: nothing to render.")
    pieces = TokenPieces(tokenizer)
    font = load_font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = measure.textbbox((0, 0), "Ag|", font=font)
    line_height = bottom - top + 6
    layouts = [
        _layout(frame_cells(f, row, pieces, mask_token_id), measure, font, width, 10, line_height) for f in frames
    ]
    height = max(bottom_y for _, bottom_y in layouts)
    images = []
    for frame, (boxes, _) in zip(frames, layouts):
        image = Image.new("RGB", (width, height), GIF_BACKGROUND)
        draw = ImageDraw.Draw(image)
        draw.text((10, 10), frame_header(frame, row, len(frames)), fill=(90, 90, 90), font=font)
        for x, y, cell_width, cell in boxes:
            if cell.kind == "masked":
                draw.rectangle([x, y + 2, x + cell_width, y + line_height - 6], fill=GIF_COLOURS["masked"])
                continue
            if cell.kind == "new":
                draw.rectangle([x, y, x + cell_width, y + line_height - 4], fill=GIF_HIGHLIGHT)
            draw.text((x, y), cell.text, fill=GIF_COLOURS[cell.kind], font=font)
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, duration_ms), loop=0)
    return len(images)
