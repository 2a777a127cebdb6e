"""The blinded review app for JupyterLab (ipywidgets): one image at a time, the criteria as a checklist."""
from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as w
from IPython.display import display

from improve_lib.plausibility.review.tasks import (append_judgment, blinded_png, check_reviewer, criteria_ids,
                                                   load_criteria, load_tasks, read_judgments, record_criteria,
                                                   register_reviewer)


class ReviewApp:
    """A blinded review app for JupyterLab (ipywidgets): show ``app.widget`` (or just ``app``).

    One image at a time, shown large (nearest-neighbour upscaling to ``image_size`` px), with its
    intended class and the dataset's criteria as checkboxes ("meets"). **Plausible** is accepted only
    when every criterion is ticked; **Implausible** records the unticked criteria (at least one).
    Each judgment is appended and fsync'd at once; reopening resumes at the first unjudged task.

    Keyboard: ipywidgets alone cannot listen to key presses, so the app has a small *shortcut box*
    (a Text field): with the cursor in it, type ``p`` (plausible), ``i`` (implausible), ``n`` (next),
    ``b`` (back) or a digit ``1``-``9`` (toggle that criterion); each key acts at once and the box
    clears itself. :meth:`on_key` is the same handler for scripts and tests.

    Blinding: the app keeps only task id, image path, intended class and position; the image path
    (which names the arm) is never put in a widget, and images are re-encoded from pixels so no
    file metadata reaches the page.
    """

    def __init__(self, run_dir, reviewer: str, dataset: str, display_name: str | None = None,
                 image_size: int = 256):
        self.run_dir = Path(run_dir)
        self.reviewer = check_reviewer(reviewer)
        self.criteria = load_criteria(dataset)
        self.image_size = int(image_size)
        tasks = load_tasks(self.run_dir)  # fails naming any image deleted since the review began
        register_reviewer(self.run_dir, reviewer, display_name)
        record_criteria(self.run_dir, self.criteria)
        # Drop the unblinding key: nothing the app holds needs it.
        self._tasks = tasks[["task_id", "image_path", "intended_class", "position"]].reset_index(drop=True)
        self._ids = criteria_ids(self.criteria)
        self._latest = {r.task_id: {"plausible": bool(r.plausible), "failed_criteria": r.failed_criteria,
                                    "comment": r.comment} for r in read_judgments(self.run_dir, reviewer).itertuples()}
        n = len(self._tasks)

        self.title = w.HTML()
        self.image = w.Image(format="png", width=self.image_size, height=self.image_size)
        self.intended = w.HTML()
        self.checkboxes = [w.Checkbox(value=False, description=f"{k + 1}. {c['name']}", tooltip=c["question"],
                                      indent=False, layout=w.Layout(width="auto"))
                           for k, c in enumerate(self.criteria["criteria"])]
        self.questions = w.HTML("<br>".join(f"<b>{k + 1}. {html.escape(c['name'])}</b>: {html.escape(c['question'])}"
                                            for k, c in enumerate(self.criteria["criteria"])))
        self.comment = w.Text(placeholder="comment (optional)", description="Comment", layout=w.Layout(width="95%"))
        self.plausible_button = w.Button(description="Plausible (p)", button_style="success")
        self.implausible_button = w.Button(description="Implausible (i)", button_style="danger")
        self.back_button = w.Button(description="Back (b)")
        self.next_button = w.Button(description="Next (n)")
        self.shortcuts = w.Text(placeholder="shortcut box: click here, then p / i / n / b / 1-9",
                                description="Keys", continuous_update=True, layout=w.Layout(width="60%"))
        self.progress = w.IntProgress(value=0, min=0, max=max(n, 1), description="Judged")
        self.progress_label = w.Label()
        self.message = w.HTML()
        self.plausible_button.on_click(lambda _b: self.judge(True))
        self.implausible_button.on_click(lambda _b: self.judge(False))
        self.back_button.on_click(lambda _b: self.back())
        self.next_button.on_click(lambda _b: self.next())
        self.shortcuts.observe(self._on_shortcut_text, names="value")

        left = w.VBox([self.image, self.intended])
        right = w.VBox([w.HTML("<b>Tick each criterion the image meets</b>"), *self.checkboxes, self.comment,
                        w.HBox([self.plausible_button, self.implausible_button]),
                        w.HBox([self.back_button, self.next_button]), self.message])
        self.widget = w.VBox([self.title, w.HBox([left, right]), w.HBox([self.progress, self.progress_label]),
                              self.shortcuts, w.Accordion(children=[self.questions], titles=("Criteria",))])
        self.title.value = (f"<b>Blinded review</b> &mdash; reviewer {self.reviewer} &mdash; criteria "
                            f"{html.escape(self.criteria['dataset'])} v{html.escape(self.criteria['version'])}")
        self.index = self.first_unjudged()
        self._show()

    # -- state --
    @property
    def n_tasks(self) -> int:
        return len(self._tasks)

    @property
    def n_judged(self) -> int:
        return len(self._latest)

    @property
    def current_task_id(self) -> str | None:
        return None if self.index >= self.n_tasks else self._tasks.at[self.index, "task_id"]

    def first_unjudged(self, start: int = 0) -> int:
        """Position of the first task at or after ``start`` without a judgment (wrapping); n if none."""
        for offset in range(self.n_tasks):
            k = (start + offset) % self.n_tasks
            if self._tasks.at[k, "task_id"] not in self._latest:
                return k
        return self.n_tasks

    def _show(self) -> None:
        self.progress.value = self.n_judged
        self.progress_label.value = f"{self.n_judged} / {self.n_tasks} judged"
        if self.index >= self.n_tasks:
            self.intended.value = "<b>All tasks judged.</b> Use Back to revisit any of them."
            self.image.value = b""
            return
        task = self._tasks.iloc[self.index]
        self.image.value = blinded_png(self.run_dir / task["image_path"], self.image_size)
        self.intended.value = (f"Task {self.index + 1} of {self.n_tasks}<br>Intended class: "
                               f"<b>{html.escape(str(task['intended_class']))}</b>")
        previous = self._latest.get(task["task_id"])
        if previous is not None:
            failed = set(filter(None, str(previous["failed_criteria"]).split(";")))
            for cb, cid in zip(self.checkboxes, self._ids):
                cb.value = cid not in failed
            self.comment.value = str(previous["comment"] or "")
            verdict = "plausible" if previous["plausible"] else "implausible"
            self.message.value = f"Judged before: {verdict}. A new judgment is added; the latest counts."
        else:
            for cb in self.checkboxes:
                cb.value = False
            self.comment.value = ""
            self.message.value = ""

    # -- actions --
    def judge(self, plausible: bool) -> dict | None:
        """Record a judgment of the current task and move on; returns the row, or None if refused."""
        if self.index >= self.n_tasks:
            self.message.value = "All tasks are judged; use Back to revisit one."
            return None
        failed = [cid for cb, cid in zip(self.checkboxes, self._ids) if not cb.value]
        if plausible and failed:
            self.message.value = ("<span style='color:#b00'>Not recorded: plausible needs every criterion "
                                  "ticked (an image failing any criterion is implausible).</span>")
            return None
        if not plausible and not failed:
            self.message.value = ("<span style='color:#b00'>Not recorded: untick the criteria the image "
                                  "fails, then press Implausible.</span>")
            return None
        task_id = self.current_task_id
        row = append_judgment(self.run_dir, self.reviewer, task_id, plausible, failed, self.comment.value,
                              self.criteria["version"])
        self._latest[task_id] = {"plausible": plausible, "failed_criteria": row["failed_criteria"],
                                 "comment": row["comment"]}
        self.index = self.first_unjudged(self.index + 1)
        self._show()
        return row

    def next(self) -> None:
        """Show the next task (judged or not)."""
        if self.index < self.n_tasks - 1:
            self.index += 1
            self._show()

    def back(self) -> None:
        """Show the previous task."""
        if self.index > 0:
            self.index = min(self.index, self.n_tasks) - 1
            self._show()

    def on_key(self, key: str) -> None:
        """Keyboard shortcut: p plausible, i implausible, n next, b back, 1-9 toggle a criterion."""
        key = (key or "").strip().lower()
        if key == "p":
            self.judge(True)
        elif key == "i":
            self.judge(False)
        elif key == "n":
            self.next()
        elif key == "b":
            self.back()
        elif key.isdigit() and 1 <= int(key) <= len(self.checkboxes):
            cb = self.checkboxes[int(key) - 1]
            cb.value = not cb.value

    def _on_shortcut_text(self, change) -> None:
        text = change["new"]
        if not text:
            return
        self.shortcuts.value = ""  # re-enters this handler with "", which returns above
        self.on_key(text[-1])

    def _ipython_display_(self):
        display(self.widget)
