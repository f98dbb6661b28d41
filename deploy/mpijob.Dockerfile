# The image deploy/mpijob.yaml runs: chainrule with its MPI extra (mpi4py, Open MPI's mpirun), and
# an SSH server set up the way the Kubeflow MPI Operator (v2) starts Open MPI jobs: the launcher
# pod runs mpirun, which reaches the worker pods over SSH on port 2222 as user mpiuser, with keys
# the operator mounts from a Secret into /home/mpiuser/.ssh.
#
#   docker build -f deploy/mpijob.Dockerfile -t REGISTRY/chainrule-mpi:0.1.0 .
#   docker push REGISTRY/chainrule-mpi:0.1.0
FROM python:3.11-slim-bookworm

ARG port=2222
RUN apt-get update && apt-get install -y --no-install-recommends openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /var/run/sshd
# The operator's keys are mounted read-only and every pod's host key is new: no host-key prompts,
# no known_hosts to write, no permission checks on the mounted files.
RUN sed -i "s/[ #]\(.*StrictHostKeyChecking \).*/ \1no/g" /etc/ssh/ssh_config \
    && echo "    UserKnownHostsFile /dev/null" >> /etc/ssh/ssh_config \
    && sed -i "s/[ #]\(.*Port \).*/ \1$port/g" /etc/ssh/ssh_config \
    && sed -i "s/#\(StrictModes \).*/\1no/g" /etc/ssh/sshd_config \
    && sed -i "s/#\(Port \).*/\1$port/g" /etc/ssh/sshd_config

RUN useradd -m mpiuser
WORKDIR /home/mpiuser
# sshd runs as mpiuser in the worker pods, so its pid file and host key live in the home folder.
RUN printf 'PidFile /home/mpiuser/sshd.pid\nHostKey /home/mpiuser/.ssh/id_rsa\nStrictModes no\nPort %s\n' "$port" \
    > .sshd_config && chown mpiuser .sshd_config

# pip puts chainrule, mpirun and prted in /usr/local/bin, on the PATH of a non-interactive SSH
# session too (which is how mpirun starts its daemon on each worker).
COPY . /src/chainrule
RUN pip install --no-cache-dir '/src/chainrule[mpi]' && rm -rf /src/chainrule
