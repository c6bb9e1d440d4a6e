# Inclusive share of samples, by thread name, whose stack has each pattern. usage: incl.py SCRIPT PATTERN...
import collections,sys,re
samples=open(sys.argv[1]).read().split('\n\n')
pats=sys.argv[2:]
inc=collections.Counter(); by=collections.Counter()
for s in samples:
    lines=[l.strip() for l in s.strip().split('\n') if l.strip()]
    if len(lines)<2: continue
    comm=lines[0].split()[0]; by[comm]+=1
    body='\n'.join(lines[1:])
    for p in pats:
        if p in body: inc[(comm,p)]+=1
for c in sorted(by):
    print(c, by[c], '  '.join('%s %.1f%%'%(p,100*inc[(c,p)]/by[c]) for p in pats))
