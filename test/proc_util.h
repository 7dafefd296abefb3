// test/proc_util.h — running the built tools as subprocesses without a shell: fork + execv with an
// argv vector (so no path or argument is ever parsed by a shell), stdin fed from a string through
// a pipe, stdout and stderr captured apart, and a deadline after which the child is SIGKILLed (a
// hung tool fails its test instead of hanging the suite). spawn_child / kill_child for tests that
// kill a run at chosen instants. Users: test/cpu_bad_input.cpp, test/cpu_kill.cpp,
// test/cpu_prepare_lima.cpp.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

struct ProcResult {
    int exit_code = -1;      // the exit status, or 128 + signal
    bool timed_out = false;  // killed at the deadline
    double seconds = 0;      // wall time
    std::string out, err;    // stdout, stderr
};

inline double monotonic_seconds() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// The child's side after fork: stdin/stdout/stderr onto the given fds, then exec. Only
// async-signal-safe calls (the test binary is multithreaded through OpenMP).
[[noreturn]] inline void exec_child(const std::vector<std::string>& argv, int in_fd, int out_fd, int err_fd,
                                    std::vector<char*>& cargv) {
    if (in_fd >= 0) dup2(in_fd, 0);
    if (out_fd >= 0) dup2(out_fd, 1);
    if (err_fd >= 0) dup2(err_fd, 2);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    execv(cargv[0], cargv.data());
    static const char msg[] = "exec failed\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(127);
}

inline int decode_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0); }

// Runs argv[0] (a path, not looked up on PATH) with argv, feeding `input` on stdin (empty: stdin
// is at its end at once), and waits at most timeout_s seconds.
inline ProcResult run_argv(const std::vector<std::string>& argv, double timeout_s = 60, const std::string& input = "") {
    ProcResult r;
    std::vector<char*> cargv;
    for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    int pin[2], pout[2], perr[2];
    if (pipe(pin) != 0 || pipe(pout) != 0 || pipe(perr) != 0) return r;
    signal(SIGPIPE, SIG_IGN);  // a child that exits without reading all of stdin must not kill the test
    const double t0 = monotonic_seconds();
    const pid_t pid = fork();
    if (pid < 0) return r;
    if (pid == 0) exec_child(argv, pin[0], pout[1], perr[1], cargv);
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    int in_fd = pin[1];
    fcntl(in_fd, F_SETFL, O_NONBLOCK);
    size_t written = 0;
    if (input.empty()) close(in_fd), in_fd = -1;
    int fds_open = 2;
    int st = 0;
    bool reaped = false;
    while (fds_open > 0 || in_fd >= 0) {
        const double left = timeout_s - (monotonic_seconds() - t0);
        if (left <= 0) {
            kill(pid, SIGKILL);
            r.timed_out = true;
            break;
        }
        pollfd p[3];
        int n = 0;
        if (pout[0] >= 0) p[n++] = {pout[0], POLLIN, 0};
        if (perr[0] >= 0) p[n++] = {perr[0], POLLIN, 0};
        if (in_fd >= 0) p[n++] = {in_fd, POLLOUT, 0};
        if (poll(p, (nfds_t)n, (int)(left * 1000) + 1) < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            if (!p[i].revents) continue;
            if (p[i].fd == in_fd) {
                const ssize_t w = write(in_fd, input.data() + written, input.size() - written);
                if (w > 0) written += (size_t)w;
                if (w < 0 && errno != EAGAIN) written = input.size();  // the child closed its stdin
                if (written == input.size()) close(in_fd), in_fd = -1;
                continue;
            }
            char buf[65536];
            const ssize_t k = read(p[i].fd, buf, sizeof(buf));
            if (k > 0) {
                (p[i].fd == pout[0] ? r.out : r.err).append(buf, (size_t)k);
            } else {
                close(p[i].fd);
                (p[i].fd == pout[0] ? pout[0] : perr[0]) = -1;
                fds_open--;
            }
        }
    }
    if (in_fd >= 0) close(in_fd);
    if (pout[0] >= 0) close(pout[0]);
    if (perr[0] >= 0) close(perr[0]);
    // the pipes are closed: wait for the exit itself, under the same deadline
    while (!reaped) {
        const pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            reaped = true;
            break;
        }
        if (monotonic_seconds() - t0 > timeout_s && !r.timed_out) {
            kill(pid, SIGKILL);
            r.timed_out = true;
        }
        usleep(1000);
    }
    r.exit_code = decode_status(st);
    r.seconds = monotonic_seconds() - t0;
    return r;
}

// A child started in the background (stdin /dev/null, stdout and stderr to `log_path`), to be
// killed at a chosen instant.
inline pid_t spawn_child(const std::vector<std::string>& argv, const std::string& log_path) {
    std::vector<char*> cargv;
    for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const int in = open("/dev/null", O_RDONLY);
    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const pid_t pid = fork();
    if (pid == 0) exec_child(argv, in, log, log, cargv);
    close(in);
    close(log);
    return pid;
}

// Waits for child `pid` at most timeout_s seconds, then SIGKILLs it; returns its decoded status.
inline int wait_child(pid_t pid, double timeout_s, bool* timed_out = nullptr) {
    const double t0 = monotonic_seconds();
    int st = 0;
    if (timed_out) *timed_out = false;
    while (waitpid(pid, &st, WNOHANG) != pid) {
        if (monotonic_seconds() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            if (timed_out) *timed_out = true;
            break;
        }
        usleep(1000);
    }
    return decode_status(st);
}
