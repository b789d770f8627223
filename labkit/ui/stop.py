"""A Stop button that also stops a run trained by a notebook cell.

A button click reaches Python as a comm message on the kernel's shell channel, and the kernel reads that channel
only between cells: while a cell runs ``lab.train()`` the click waits until the run is over. The kernel's
*control* channel is served by a thread of its own, and an ``interrupt_request`` sent there makes the kernel
send itself SIGINT (ipykernel's ``interrupt_request``), which Python delivers to the main thread, the one running
the cell, within one bytecode of the training loop. So:

* while a run trains in a background thread (the Train button, ``Lab.start``), a click is an ordinary comm
  message (``on_click``);
* while a cell trains (``interrupt`` is True), the button's JavaScript sends ``interrupt_request`` on the control
  channel instead, and :func:`stop_on_interrupt` has replaced the SIGINT handler for the length of the run with
  one that asks the trainer to stop after its current step. No ``KeyboardInterrupt`` is raised: the cell ends
  normally with its run ``stopped``, and the cells queued after it (Run All) still run, in order.

JupyterLab's own interrupt (■) takes the same route. The control channel works in JupyterLab and in Voilà alike
(Voilà serves no REST endpoint for interrupting a kernel, only its websocket). Nothing is interrupted when no
cell is training: the JavaScript only sends the request while Python says ``interrupt``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anywidget
import traitlets

_ESM = """
function interruptKernel(model) {
  // The widget manager of JupyterLab and of Voila holds the page's kernel connection.
  const kernel = model.widget_manager && model.widget_manager.kernel;
  if (!kernel || typeof kernel.sendControlMessage !== 'function') return false;
  const header = {msg_id: crypto.randomUUID(), msg_type: 'interrupt_request', username: kernel.username || '',
                  session: kernel.clientId, date: new Date().toISOString(), version: '5.3'};
  kernel.sendControlMessage({header, parent_header: {}, metadata: {}, content: {}, channel: 'control',
                             buffers: []}, true, true);
  return true;
}

function render({ model, el }) {
  const button = document.createElement('button');
  button.className = 'jupyter-widgets jupyter-button widget-button mod-warning labkit-stop';
  const sync = () => {
    button.textContent = '\\u25A0 ' + model.get('description');
    button.disabled = model.get('disabled');
    button.title = model.get('tooltip');
  };
  button.addEventListener('click', () => {
    if (model.get('disabled')) return;
    if (model.get('interrupt') && interruptKernel(model)) {
      button.disabled = true;  // the kernel is busy with the cell; Python re-enables the button after the run
      return;
    }
    model.set('clicks', model.get('clicks') + 1);
    model.save_changes();
  });
  model.on('change:description', sync);
  model.on('change:disabled', sync);
  model.on('change:tooltip', sync);
  sync();
  el.appendChild(button);
}
export default { render };
"""

_CSS = """
.labkit-stop { width: 148px; }
"""


class StopButton(anywidget.AnyWidget):
    """A Stop button: ``on_click`` for runs in a background thread, a kernel interrupt while a cell trains."""

    _esm = _ESM
    _css = _CSS
    description = traitlets.Unicode("Stop").tag(sync=True)
    tooltip = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(True).tag(sync=True)
    #: True while a cell trains in the kernel's main thread: a click then interrupts the kernel.
    interrupt = traitlets.Bool(False).tag(sync=True)
    clicks = traitlets.Int(0).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._callbacks: list[Callable[[StopButton], None]] = []
        self.observe(lambda _: [callback(self) for callback in self._callbacks], names="clicks")

    def click(self) -> None:
        """What a click that reaches the kernel as a message does (for scripts and tests)."""
        self.clicks += 1

    def on_click(self, callback: Callable[[StopButton], None]) -> None:
        """Call ``callback(button)`` on each click that reaches the kernel as a message."""
        self._callbacks.append(callback)


@contextlib.contextmanager
def stop_on_interrupt(stop: Callable[[], None], button: StopButton | None = None) -> Iterator[bool]:
    """While the block runs in the main thread, SIGINT calls ``stop()`` instead of raising KeyboardInterrupt.

    Yields whether the handler is in place (only the main thread can install one; elsewhere nothing changes).
    ``button.interrupt`` is True meanwhile, so the button's clicks interrupt the kernel. ``stop`` runs inside a
    signal handler: it must only set a flag (``Trainer.stop`` sets an ``Event``).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: stop())
    if button is not None:
        button.interrupt = True
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, previous)
        if button is not None:
            button.interrupt = False
