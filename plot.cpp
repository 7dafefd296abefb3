// plot.cpp — the loss curve through gnuplot, without a shell (see plot.h).
#include "plot.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common.h"

// a gnuplot single-quoted string: only ' is special, and it is doubled
static std::string gp_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += "''";
        else if (c == '\n' || c == '\r') out += ' ';  // a newline would end the command
        else out += c;
    }
    return out + "'";
}

std::string plot_loss_curve(const std::string& log_path, const std::string& png_path, const std::string& title) {
    const std::string tmp = png_path + ".tmp." + std::to_string(getpid());
    const std::string script =
        "set terminal pngcairo size 1000,600 noenhanced\n"
        "set output " + gp_quote(tmp) + "\n"
        "set datafile separator ','\n"
        "set datafile missing ''\n"
        "set key autotitle columnhead\n"
        "set title " + gp_quote(title) + "\n"
        "set xlabel 'step'\n"
        "set ylabel 'cross-entropy (nats / answer token)'\n"
        "set grid\n"
        "plot " + gp_quote(log_path) + " using 1:3 with lines lw 2 title 'train loss', \\\n"
        "     " + gp_quote(log_path) + " using 1:4 with linespoints pt 7 lw 2 title 'val loss'\n";
    int fds[2];
    if (pipe(fds) != 0) return std::string("cannot start gnuplot (") + strerror(errno) + ")";
    const pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return std::string("cannot start gnuplot (") + strerror(errno) + ")";
    }
    if (pid == 0) {  // the child: stdin from the pipe, stdout/stderr to /dev/null, then gnuplot
        dup2(fds[0], 0);
        close(fds[0]);
        close(fds[1]);
        FILE* devnull = fopen("/dev/null", "w");
        if (devnull) {
            dup2(fileno(devnull), 1);
            dup2(fileno(devnull), 2);
        }
        char* const argv[] = {(char*)"gnuplot", nullptr};
        execvp("gnuplot", argv);
        _exit(127);
    }
    close(fds[0]);
    // a gnuplot that died early must not kill us with SIGPIPE
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    size_t done = 0;
    while (done < script.size()) {
        const ssize_t n = write(fds[1], script.data() + done, script.size() - done);
        if (n <= 0) break;
        done += (size_t)n;
    }
    close(fds[1]);
    signal(SIGPIPE, old);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !file_exists(tmp)) {
        remove(tmp.c_str());
        return WIFEXITED(status) && WEXITSTATUS(status) == 127 ? "gnuplot is not installed (apt-get install gnuplot-nox)"
                                                               : "gnuplot failed";
    }
    if (rename(tmp.c_str(), png_path.c_str()) != 0) {
        remove(tmp.c_str());
        return std::string("cannot rename into place (") + strerror(errno) + ")";
    }
    return "";
}
