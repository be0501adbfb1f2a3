"""The page of `--serve ray`: one CPU replica with a Gradio page mounted on a FastAPI ingress (Ray's GradioServer
answers 500). It shows the model replicas and their live conversations (from the replica board) and sends typed
questions to a model replica through a deployment handle. Gradio's queue lives in one process: keep it at one
replica."""

from __future__ import annotations

COLUMNS = ["replica", "node", "state", "live conversations", "waiting", "per replica"]


def replica_rows() -> list[dict]:
    import ray

    from .serve_board import board

    return ray.get(board().table.remote(), timeout=10)


def replica_table() -> list[list]:
    return [[r["replica"], r["node"], r.get("state", "serving"), r["live"], r["waiting"], r["capacity"]]
            for r in replica_rows()]


async def ask_a_replica(text: str) -> tuple[str, str]:
    from ray import serve

    text = (text or "").strip()
    if not text:
        return "Type a question first.", ""
    handle = serve.get_deployment_handle("model", app_name="model")
    try:
        r = await handle.ask.remote(text)
    except Exception as e:  # a replica that died mid-answer, a full pool: said on the page, the page goes on
        return f"No answer: {type(e).__name__}: {str(e)[:300]}", ""
    return r["text"] or f"(empty answer: {r['status']})", f"answered by replica {r['replica']}"


def build_page(api_url: str, banner: str | None):
    import gradio as gr

    with gr.Blocks(title="Mini-Omni2 on Ray Serve") as demo:
        gr.Markdown("# Mini-Omni2 on Ray Serve\nConversations run on a pool of model replicas. Programs connect to "
                    f"the Realtime API at `{api_url}`; each connection stays on one replica.")
        if banner:
            gr.Markdown(banner)
        table = gr.Dataframe(headers=COLUMNS, label="Model replicas", interactive=False)
        question = gr.Textbox(label="Ask a model replica (typed, answered in text)")
        answer = gr.Textbox(label="Answer", interactive=False)
        where = gr.Markdown()
        question.submit(ask_a_replica, question, [answer, where])
        gr.Button("Refresh the table").click(replica_table, None, table)
        demo.load(replica_table, None, table)
        gr.Timer(2.0).tick(replica_table, None, table)
    demo.queue(default_concurrency_limit=8)
    return demo


def page_app(api_url: str, banner: str | None):
    """The ASGI app of the page replica: the Gradio page at /ui, / sends a browser there, /replicas is the table
    as JSON (for scripts and the tests)."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, RedirectResponse

    web = FastAPI()

    @web.get("/")
    def index():
        return RedirectResponse("/ui/")

    @web.get("/replicas")
    def replicas():
        return JSONResponse([{k: r[k] for k in ("replica", "actor", "node", "state", "live", "waiting",
                                                         "capacity")}
                             for r in replica_rows()])

    return gr.mount_gradio_app(web, build_page(api_url, banner), path="/ui")
