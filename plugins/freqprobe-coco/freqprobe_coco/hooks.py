"""Hook implementations of the COCO plugin: exactly the hooks a third-party plugin uses."""

from __future__ import annotations

from freqprobe import hookimpl


@hookimpl
def register_datasets():
    from .data import CocoDataSource

    return [CocoDataSource]


@hookimpl
def register_model_sources():
    from .detectron2_source import Detectron2ModelSource

    return [Detectron2ModelSource]


@hookimpl
def register_adapters():
    from .adapter import DetectorAdapter

    return [DetectorAdapter]


@hookimpl
def register_metrics():
    from .metric import CocoMap

    return [CocoMap]


@hookimpl
def register_probes():
    from .probe import CocoMapProbe

    return [CocoMapProbe]


@hookimpl
def add_options(parser):
    """``--coco-lenient`` (run, decompose): bad annotations of ``coco:`` data dropped and counted instead of refused.

    Routed into the data source's ``lenient`` option (``dataset="coco", key="lenient"``); refused with other data."""
    parser.add_option("--coco-lenient", flag=True, commands=("run", "decompose"), dataset="coco", key="lenient",
                      help="coco: data: drop (and count in the manifest) annotations that would make the numbers "
                           "wrong (duplicate ids, orphans, unknown categories, bad boxes) instead of refusing the file.")


@hookimpl
def report_result(result, context):
    """``detections_<variant>[_<param>].json`` (COCO results), the Figure 8/9 lists and their side-by-side panels."""
    if "detections" not in result.extras or getattr(context, "out_dir", None) is None:
        return
    from .report import write_coco_outputs

    write_coco_outputs(result, context)


@hookimpl
def manifest_entries(context, result):
    got = result.extras.get("coco") if result is not None else None
    return {"coco": got} if got else None


@hookimpl
def report_folder(folder, report):
    """``freqprobe report``: a coco-map run's folder (manifest.json of probe ``coco-map`` and summary.csv) is a probe
    run's section with its Figure 8/9 panels (``panels/*.png``)."""
    from freqprobe.plugin import is_probe_run

    if not is_probe_run(folder):
        return None
    probe = report.read_manifest(folder).get("probe")
    name = probe.get("name") if isinstance(probe, dict) else probe
    if name != "coco-map":
        return None
    return report.probe_section(folder, report.level, patterns=["panels/*.png"])
