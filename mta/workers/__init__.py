"""mta.workers - more than one core: worker processes that share the listeners.

With worker_processes = 0 (the default) the daemon is one process and one
reactor: listeners, SMTP sessions, queue manager, pickup and deliveries
together.  With worker_processes = N the daemon (the master) starts N
worker processes, each with its own reactor:

    master (twistd mta)                      worker 1..N (python -m mta.workers)
      binds every listener, the control        adopts the master's listening
      socket and the queue lock                sockets (the kernel hands each
      queue manager (the only writer of        connection to one accepting
      queue state), pickup, deliveries,        process) and runs the SMTP
      bounces, the control channel             sessions: cleanup and commit
      the anvil: per-client counts and         into incoming/ through its own
      rates for all processes                  committer (250 after the sync)
      watches the workers: restarts a          announces each commit to the
      dead one, replaces all on reload         master (AMP), asks it for counts

With anvil_store (mta.smtpd.anvilstore) the master's counts are in Redis,
shared with other machines: the workers still ask the master, which asks
Redis.

The worker's commit is the one-process commit (mta.queue.committer): a 250
still means the file is durable in incoming/.  A worker killed with -9
loses only sessions that had not been answered; whatever it committed is
in incoming/, and the master scans incoming/ again when a worker ends.
Each worker writes its temporary files in tmp/worker.PID, which the master
removes when the worker ends (and at start-up), so no process removes
another's files.

    commands.py  the AMP commands between master and workers
    master.py    WorkerPool: start, watch, restart, retire, stop; who accepts
    worker.py    one worker process: Worker, RemoteAnvil, main()

DEVIATIONS
    Postfix's master starts one smtpd process per session, up to
    default_process_limit, and reuses each for max_use sessions; mta's
    workers are long-lived and each runs many sessions in one reactor, so
    worker_processes is about cores, not sessions (use the number of cores,
    or one less to leave the master a core for deliveries).  Deliveries run
    in the master only.  TLS session tickets are per process (Postfix's
    tlsmgr shares its keys): a client resumes only when it reaches the same
    worker again.

SECURITY
    See mta.workers.master and mta.workers.worker.

CONFIGURATION
    worker_processes, service_throttle_time.
"""
