"""Smoke test: Beam Python pipelines on the local Flink cluster started by flink.sh.

Run with the project's Python (apache-beam installed), after `flink.sh install` and
`flink.sh start`:

    eval "$(deploy/flink/flink.sh env)"
    python deploy/flink/smoke_test.py            # batch: sum, GroupByKey, fixed windows
    python deploy/flink/smoke_test.py --streaming  # the same with --streaming
    python deploy/flink/smoke_test.py --job_endpoint=$FLINK_JOB_ENDPOINT  # PortableRunner

Each pipeline writes to a local file; the script checks the contents and prints wall times.
Exit status 0 when every check passes.
"""

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions


def flink_args(args):
    if args.job_endpoint:
        # A job server that is already running (flink.sh jobserver start).
        out = ['--runner=PortableRunner', '--job_endpoint=%s' % args.job_endpoint]
    else:
        # FlinkRunner starts the job server jar itself (java -jar) for each pipeline.
        out = [
            '--runner=FlinkRunner',
            '--flink_master=%s' % args.flink_master,
            '--flink_version=%s' % args.flink_version,
            '--flink_job_server_jar=%s' % args.job_server_jar,
        ]
    out += [
        '--environment_type=%s' % args.environment_type,
        '--parallelism=%d' % args.parallelism,
    ]
    if args.environment_config:
        out.append('--environment_config=%s' % args.environment_config)
    if args.streaming:
        out.append('--streaming')
    return out


def read_lines(prefix):
    lines = []
    for path in sorted(glob.glob(prefix + '*')):
        with open(path) as f:
            lines.extend(line.rstrip('\n') for line in f if line.strip())
    return lines


def run_sum(opts, out_dir):
    prefix = os.path.join(out_dir, 'sum')
    with beam.Pipeline(options=PipelineOptions(opts)) as p:
        (p
         | beam.Create(range(1000))
         | beam.Map(lambda x: x * 2)
         | beam.CombineGlobally(sum)
         | beam.Map(str)
         | beam.io.WriteToText(prefix))
    got = read_lines(prefix)
    want = [str(2 * sum(range(1000)))]
    return got == want, 'sum: got %s want %s' % (got, want)


def run_gbk(opts, out_dir):
    prefix = os.path.join(out_dir, 'gbk')
    with beam.Pipeline(options=PipelineOptions(opts)) as p:
        (p
         | beam.Create(['item%d' % (i % 7) for i in range(1000)])
         | beam.Map(lambda w: (w, 1))
         | beam.GroupByKey()
         | beam.MapTuple(lambda k, vs: '%s,%d' % (k, sum(vs)))
         | beam.io.WriteToText(prefix))
    got = sorted(read_lines(prefix))
    counts = {}
    for i in range(1000):
        counts['item%d' % (i % 7)] = counts.get('item%d' % (i % 7), 0) + 1
    want = sorted('%s,%d' % kv for kv in counts.items())
    return got == want, 'gbk: got %s want %s' % (got, want)


def run_windowed(opts, out_dir):
    """Event-time fixed windows over a bounded source (watermark reaches +inf at the end)."""
    prefix = os.path.join(out_dir, 'windowed')
    # 600 events, one per second from t=0: 10 one-minute windows, keys a/b/c.
    events = [('abc'[i % 3], i) for i in range(600)]

    def fmt(kv, win=beam.DoFn.WindowParam):
        return '%d,%s,%d' % (int(win.start), kv[0], kv[1])

    with beam.Pipeline(options=PipelineOptions(opts)) as p:
        (p
         | beam.Create(events)
         | beam.Map(lambda e: beam.window.TimestampedValue((e[0], 1), e[1]))
         | beam.WindowInto(beam.window.FixedWindows(60))
         | beam.CombinePerKey(sum)
         | beam.Map(fmt)
         | beam.io.WriteToText(prefix))
    got = sorted(read_lines(prefix))
    want = sorted('%d,%s,%d' % (w * 60, k, 20) for w in range(10) for k in 'abc')
    return got == want, 'windowed: got %s want %s' % (got[:5], want[:5])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--flink_master', default=os.environ.get('FLINK_REST', '127.0.0.1:8081'))
    parser.add_argument('--flink_version', default=os.environ.get('FLINK_VERSION', '1.19'))
    parser.add_argument('--job_server_jar', default=os.environ.get('FLINK_JOB_SERVER_JAR'))
    parser.add_argument('--job_endpoint', default='',
                        help='use PortableRunner against this job server instead of FlinkRunner')
    parser.add_argument('--environment_type', default='LOOPBACK')
    parser.add_argument('--environment_config', default='')
    parser.add_argument('--parallelism', type=int, default=2)
    parser.add_argument('--streaming', action='store_true')
    parser.add_argument('--only', choices=['sum', 'gbk', 'windowed'])
    args = parser.parse_args(argv)
    if not args.job_server_jar and not args.job_endpoint:
        parser.error('--job_server_jar (or FLINK_JOB_SERVER_JAR) is required')

    opts = flink_args(args)
    ok_all = True
    out_dir = tempfile.mkdtemp(prefix='topk-flink-smoke-')
    for name, fn in (('sum', run_sum), ('gbk', run_gbk), ('windowed', run_windowed)):
        if args.only and args.only != name:
            continue
        t0 = time.time()
        ok, msg = fn(opts, out_dir)
        print('%s %s (%.1fs)%s' % ('PASS' if ok else 'FAIL', name, time.time() - t0,
                                   '' if ok else ': ' + msg))
        ok_all = ok_all and ok
    if ok_all:
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        print('outputs kept in %s' % out_dir)
    return 0 if ok_all else 1


if __name__ == '__main__':
    sys.exit(main())
